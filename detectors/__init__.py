"""Online anomaly detection over windowed cost/usage series, root-cause hints and the NAB evaluation harness.

Plain Python on River: no Faust import, so the Faust agents stay thin shells that feed these modules and a
restarted worker restores detector state from bytes instead of relearning.
"""
