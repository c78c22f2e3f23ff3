"""Creating the work pool, registering the deployment, starting the stack's processes."""
