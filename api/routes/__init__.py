"""The HTTP routes, one module per resource. Each route is thin: it declares what it needs
as `Annotated` dependencies (api/deps.py) and answers with a view (api/views.py)."""
