"""Stream processing: plain, testable modules (validation, pricing, tagging, live windows) and the thin Faust agents around them (`agents.worker`)."""
