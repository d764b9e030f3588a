"""Sample arr-stack data: what the demo shows and the tests copy.

Config directories like Sonarr/Radarr/Prowlarr keep them (config.xml with an ApiKey, WAL-mode
SQLite databases, thousands of small MediaCover images, Backups/), and a media library with shows
and movies, plus the awkward cases a copy must survive: symlinks, empty directories, empty files,
names with spaces, quotes and unicode.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

APPS = {"sonarr": 8989, "radarr": 7878, "prowlarr": 9696}


@dataclass
class SampleSizes:
    covers: int = 300  # MediaCover files per app
    cover_bytes: tuple[int, int] = (1024, 64 * 1024)
    db_rows: int = 2000
    episodes: int = 6
    episode_bytes: int = 2 * 2**20
    movies: int = 2
    movie_bytes: int = 4 * 2**20
    seed: int = 42


@dataclass
class SampleTree:
    root: Path
    config_dirs: dict[str, Path] = field(default_factory=dict)
    media_dir: Path | None = None

    def source_dirs(self) -> dict[str, Path]:
        dirs = {f"{app}-config": path for app, path in self.config_dirs.items()}
        if self.media_dir is not None:
            dirs["media"] = self.media_dir
        return dirs


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def make_config_dir(path: Path, app: str, sizes: SampleSizes, rng: random.Random) -> Path:
    """One app's /config: config.xml, <app>.db and logs.db in WAL mode, MediaCover/, Backups/."""
    path.mkdir(parents=True, exist_ok=True)
    api_key = f"{rng.getrandbits(128):032x}"
    (path / "config.xml").write_text(
        f"<Config>\n  <BindAddress>*</BindAddress>\n  <Port>{APPS.get(app, 8080)}</Port>\n"
        f"  <ApiKey>{api_key}</ApiKey>\n  <AuthenticationMethod>Forms</AuthenticationMethod>\n</Config>\n"
    )
    for name in (f"{app}.db", "logs.db"):
        make_database(path / name, sizes.db_rows, rng)
    for index in range(sizes.covers):
        cover = path / "MediaCover" / str(index // 3 + 1) / f"poster-{index % 3}.jpg"
        cover.parent.mkdir(parents=True, exist_ok=True)
        cover.write_bytes(b"\xff\xd8\xff\xe0" + _random_bytes(rng, rng.randint(*sizes.cover_bytes)))
    (path / "Backups" / "scheduled").mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(exist_ok=True)  # an empty directory the copy must keep
    return path


def make_database(path: Path, rows: int, rng: random.Random) -> None:
    """A WAL-mode SQLite database with a table of rows (closed: its WAL is checkpointed)."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("pragma journal_mode=wal")
        connection.execute(
            "create table if not exists History (Id integer primary key, Title text, Data blob)"
        )
        connection.executemany(
            "insert into History (Title, Data) values (?, ?)",
            ((f"Episode {i}", _random_bytes(rng, 200)) for i in range(rows)),
        )
        connection.commit()
    finally:
        connection.close()


def make_media_dir(path: Path, sizes: SampleSizes, rng: random.Random) -> Path:
    """A library: shows and movies with odd names, a symlink, an empty file, an empty directory."""
    show = path / "tv" / "The Expanse (2015)" / "Season 01"
    show.mkdir(parents=True, exist_ok=True)
    for episode in range(1, sizes.episodes + 1):
        name = f"The Expanse - S01E{episode:02d} - Épisode «{episode}».mkv"
        (show / name).write_bytes(_random_bytes(rng, sizes.episode_bytes))
    movies = path / "movies"
    for index in range(sizes.movies):
        folder = movies / f"Movie's Name {index} (19{80 + index})"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{folder.name}.mkv").write_bytes(_random_bytes(rng, sizes.movie_bytes))
        (folder / "movie.nfo").write_text(f"<movie><title>Movie {index}</title></movie>\n")
    (path / "downloads" / "incomplete").mkdir(parents=True, exist_ok=True)  # empty directory
    (path / "tv" / "The Expanse (2015)" / ".ignore").touch()  # 0-byte file
    latest = path / "tv" / "latest"
    if not latest.is_symlink():
        latest.symlink_to("The Expanse (2015)/Season 01")
    return path


def make_sample_tree(root: Path, sizes: SampleSizes | None = None) -> SampleTree:
    """Config directories for every app in APPS and one media library, under ``root``."""
    sizes = sizes or SampleSizes()
    rng = random.Random(sizes.seed)
    tree = SampleTree(root)
    for app in APPS:
        tree.config_dirs[app] = make_config_dir(root / f"{app}-config", app, sizes, rng)
    tree.media_dir = make_media_dir(root / "media", sizes, rng)
    return tree


class DatabaseWriter:
    """Keeps writing to a WAL-mode database, like a running app, until stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stopping = threading.Event()
        self.rows_written = 0
        self.thread = threading.Thread(target=self._write, daemon=True, name=f"writer-{path.name}")

    def __enter__(self) -> DatabaseWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()

    def _write(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("pragma journal_mode=wal")
        connection.execute(
            "create table if not exists Writes (Id integer primary key, At real, Data blob)"
        )
        try:
            while not self.stopping.is_set():
                connection.execute(
                    "insert into Writes (At, Data) values (?, ?)",
                    (os.times().elapsed, os.urandom(512)),
                )
                connection.commit()
                self.rows_written += 1
                self.stopping.wait(0.002)
        finally:
            connection.close()
