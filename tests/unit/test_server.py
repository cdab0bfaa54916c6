"""What `chatsvc serve` sets up before gunicorn forks its workers."""

from __future__ import annotations

from pathlib import Path

from chatsvc import server


def test_a_configured_metrics_directory_is_made_or_emptied_of_an_earlier_runs_files(
    tmp_path: Path,
) -> None:
    fresh = tmp_path / "new" / "metrics"
    assert server.metrics_directory(fresh) == (fresh, False)
    assert fresh.is_dir()
    (fresh / "counter_123.db").write_bytes(b"old")
    (fresh / "gauge_livesum_123.db").write_bytes(b"old")
    (fresh / "keep.txt").write_text("not ours")
    assert server.metrics_directory(fresh) == (fresh, False)
    assert sorted(p.name for p in fresh.iterdir()) == ["keep.txt"]


def test_without_one_each_instance_gets_a_new_empty_directory() -> None:
    first, made = server.metrics_directory(None)
    second, _ = server.metrics_directory(None)
    try:
        assert made and first != second and first.is_dir() and not any(first.iterdir())
    finally:
        first.rmdir()
        second.rmdir()


def test_gunicorn_logs_through_chatsvcs_logging_with_request_ids() -> None:
    options = server.gunicorn_options("127.0.0.1", 8000, 2, log_format="json")
    assert options["logger_class"] == "chatsvc.server.AccessLogger"
    root = options["logconfig_dict"]["root"]
    handler = options["logconfig_dict"]["handlers"][root["handlers"][0]]
    assert handler["formatter"] == "json" and handler["stream"] == "ext://sys.stderr"
    for name in ("gunicorn.error", "gunicorn.access"):
        assert options["logconfig_dict"]["loggers"][name] == {
            "level": "INFO",
            "handlers": [],
            "propagate": True,
        }
