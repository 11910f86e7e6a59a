"""The competition's zip downloaded with the official Kaggle client, credentials checked first."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pneumo.sources.layout import SourceError

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kaggle_credentials() -> str | None:
    """Where the Kaggle client (2.x) would find credentials, or None; never uses the network.

    The access token (KAGGLE_API_TOKEN, ~/.kaggle/access_token) is found by the client's own
    ``kagglesdk.get_access_token_from_env``. The rest of its search is copied here from
    ``KaggleApi`` (KAGGLE_USERNAME + KAGGLE_KEY, kaggle.json in KAGGLE_CONFIG_DIR, ~/.kaggle or
    ~/.config/kaggle, then ``kaggle auth login``'s ~/.kaggle/credentials.json): importing the
    ``kaggle`` package authenticates at import time, which introspects a token over the network,
    prints its own help and creates ~/.kaggle when nothing is found, so it cannot be asked first.
    """
    # kagglesdk, not kaggle: importing it neither authenticates nor prints (0.5 s of imports)
    from kagglesdk import get_access_token_from_env

    token, where = get_access_token_from_env()
    if token:
        if where == "KAGGLE_API_TOKEN":
            return "the environment variable KAGGLE_API_TOKEN"
        return (
            str(Path("~/.kaggle/access_token").expanduser()) if where == "access_token" else where
        )
    env, home = os.environ, Path.home()
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else None
    if config_dir is None:
        config_dir = home / ".kaggle"
        if not config_dir.exists():
            xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
            config_dir = xdg / "kaggle"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "the environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    values = _read_json(config_dir / "kaggle.json")  # the client lets KAGGLE_* fill its gaps
    values.update({k[7:].lower(): v for k, v in env.items() if k.startswith("KAGGLE_")})
    if values.get("username") and values.get("key"):
        return str(config_dir / "kaggle.json")
    if (home / ".kaggle" / "credentials.json").is_file():
        return str(home / ".kaggle" / "credentials.json")
    return None


def missing_credentials_message(competition: str) -> str:
    """What to provide so that the Kaggle client can download ``competition``."""
    return (
        f"No Kaggle credentials found, so the competition {competition!r} cannot be downloaded. "
        "Provide one of: the environment variable KAGGLE_API_TOKEN (an API token from "
        "https://www.kaggle.com/settings/api) or that token in the file ~/.kaggle/access_token; "
        "the environment variables KAGGLE_USERNAME and KAGGLE_KEY; or a legacy API key file "
        'kaggle.json ({"username": ..., "key": ...}) in ~/.kaggle/ or in the folder named by '
        "KAGGLE_CONFIG_DIR (or log in once with `kaggle auth login`). You must also accept the "
        "competition's rules while logged in at "
        f"https://www.kaggle.com/competitions/{competition}/rules before the download is allowed. "
        "Alternatively set data.rsna.archive to a local copy of the zip or of its unpacked folder."
    )


def download_competition(competition: str, download_dir: Path) -> Path:
    """Download the competition's zip with the official Kaggle client; return its path."""
    source = kaggle_credentials()
    if source is None:
        raise SourceError(missing_credentials_message(competition))
    # importing kaggle authenticates (and prints) at import time: only here, once we need it
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client exits on failed authentication
        raise SourceError(
            f"the Kaggle client could not authenticate with the credentials from {source}. "
            + missing_credentials_message(competition)
        ) from None
    download_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s with the Kaggle client (credentials: %s)", competition, source)
    try:
        api.competition_download_files(competition, path=str(download_dir), quiet=False)
    except Exception as e:  # the client raises requests / HTTP errors of several kinds
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {
            401: "the credentials were refused: create a new token",
            403: (
                "access denied: accept the competition's rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules while logged in"
            ),
            404: f"no competition named {competition!r} (data.rsna.competition)",
        }.get(status, "check the network, or set data.rsna.archive to a local copy")
        raise SourceError(f"downloading {competition!r} failed ({e}): {hint}") from e
    zip_path = download_dir / f"{competition}.zip"
    if not zip_path.is_file():
        raise SourceError(f"the Kaggle client finished but {zip_path} is not there")
    return zip_path
