"""Guest services: what the tools do inside the guest."""
