"""`python -m comfybatch.dashboard`: serve the dashboard API on 127.0.0.1."""

import uvicorn

from comfybatch.dashboard.app import create_app
from comfybatch.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(create_app(settings), host="127.0.0.1", port=settings.dashboard_port)


if __name__ == "__main__":
    main()
