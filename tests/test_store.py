"""A new sqlite store is a copy of an empty-store template (tracking/store.py): it must be the store MLflow makes."""

import contextlib
import sqlite3
from pathlib import Path

from tracking import Store
from tracking.store import _create_from_template


def tables(db: Path) -> dict[str, list]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return {
            # a statement's lines sorted: MLflow's migrations write a table's constraints in varying order
            "schema": sorted((kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                             for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master")),
            "alembic_version": con.execute("SELECT * FROM alembic_version").fetchall(),
            "experiments": con.execute(
                "SELECT experiment_id, name, lifecycle_stage, workspace FROM experiments ORDER BY experiment_id"
            ).fetchall(),
            "default_artifacts": con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0"
                                             ).fetchall(),
            "experiment_tags": con.execute("SELECT * FROM experiment_tags ORDER BY key").fetchall(),
        }


def test_a_store_copied_from_the_template_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts the Default experiment's artifacts under the working directory
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copied = tmp_path / "copied" / "mlflow.db"
    Store(f"sqlite:///{copied}").experiment_id("first")
    (template,) = (tmp_path / "cache" / "benchmark").glob("mlflow-*-empty-store.db")

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))  # no template: MLflow makes the store
    made = tmp_path / "made" / "mlflow.db"
    Store(f"sqlite:///{made}").experiment_id("first")

    assert tables(copied) == tables(made)
    assert tables(copied)["experiments"][0][:2] == (0, "Default")
    assert copied.stat().st_mode == made.stat().st_mode
    assert [p.name for p in copied.parent.iterdir()] == ["mlflow.db"]  # the copy's temporary name is gone

    # and a new store really is the template's copy
    with contextlib.closing(sqlite3.connect(template)) as con, con:
        con.execute("CREATE TABLE marker (x INTEGER)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    marked = tmp_path / "marked" / "mlflow.db"
    Store(f"sqlite:///{marked}")
    assert ("table", "marker") in {row[:2] for row in tables(marked)["schema"]}


def test_an_existing_store_is_never_replaced_by_the_template(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    Store(f"sqlite:///{db}").experiment_id("kept")
    _create_from_template(db)  # as a second process would, having seen no store a moment before
    assert "kept" in Store(f"sqlite:///{db}").experiments()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mlflow.db"]
