"""`python -m comfybatch.dashboard`: serve the dashboard on COMFYBATCH_DASHBOARD_HOST:PORT (127.0.0.1:8600)."""

import uvicorn

from comfybatch.dashboard.app import create_app
from comfybatch.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.dashboard_host, port=settings.dashboard_port)


if __name__ == "__main__":
    main()
