"""The host side: a simulated VMX, its clients and the `vmtools-sim` command line."""
