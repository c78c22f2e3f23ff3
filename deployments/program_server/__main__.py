"""`python -m deployments.program_server [--host H] [--port P]`: run the program server.

Listens on DSPY_SERVICE_PROGRAM_SERVER_URL's host and port unless told otherwise (keep it
on loopback or a private network; every request needs the internal token as well). Needs
the worker's Prefect access (PREFECT_API_URL, PREFECT_API_AUTH_STRING) to read owners'
credentials, and the shared storage the registry keeps documents in. Exits non-zero when
the port is taken or the token file cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from deployments.program_server.app import create_app
    from dspy_service.serving_settings import program_server_token
    from dspy_service.settings import get_settings

    settings = get_settings()
    host, port = settings.program_server_address
    parser = argparse.ArgumentParser(prog="dspy-service program-server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=host)
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, program_server_token(settings, settings.home_dir), dict(os.environ))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
