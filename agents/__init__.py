"""The Faust worker: thin agents around the domain core (`prismops.finops`), one module per domain, built into one app by `prismops.agents.worker`."""
