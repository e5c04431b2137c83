"""CLI flag handling and config-file helpers (a model server only for the startup-with-labels cases)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from tfmlops.serving.config import (ConfigError, load_batching_parameters, load_config, parse_config_text,
                                    write_config)
from tfmlops.serving.model_servers import main as cli

from ._proc import ServerProcess, server_cmd


def test_unknown_flag_is_an_error():
    p = subprocess.run(server_cmd() + ["--port=9", "--no_such_flag=1"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "Unknown command line flag 'no_such_flag'" in p.stderr


def test_flag_syntaxes():
    f = cli.parse_flags(["--port=9000", "--rest_api_port", "9001", "--enable_batching", "--model_name", "m",
                         "--allow_version_labels_for_unavailable_models=false",
                         "--file_system_poll_wait_seconds=-1"])
    assert f["port"] == 9000 and f["rest_api_port"] == 9001 and f["enable_batching"] is True
    assert f["model_name"] == "m" and f["allow_version_labels_for_unavailable_models"] is False
    assert f["file_system_poll_wait_seconds"] == -1
    assert cli.FLAGS["port"][1] == 8500 and cli.FLAGS["rest_api_port"][1] == 0
    assert cli.FLAGS["rest_api_timeout_in_ms"][1] == 30000 and cli.FLAGS["model_name"][1] == "default"
    with pytest.raises(cli.FlagError):
        cli.parse_flags(["--port=abc"])
    with pytest.raises(cli.FlagError):
        cli.parse_flags(["--model_name"])
    with pytest.raises(cli.FlagError):
        cli.parse_flags(["stray"])


def test_startup_errors_exit_nonzero(tmp_path):
    p = subprocess.run(server_cmd() + ["--port=9"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "are empty" in p.stderr
    p = subprocess.run(server_cmd() + ["--port=0", f"--model_base_path={tmp_path}"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and ("At least one of server_options.grpc_port or server_options.grpc_socket_path "
                                  "must be set.") in p.stderr
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { nope: 1 }")
    p = subprocess.run(server_cmd() + ["--port=9", f"--model_config_file={bad}"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "Invalid protobuf file" in p.stderr
    p = subprocess.run(server_cmd() + ["--port=9", f"--model_base_path={tmp_path}",
                                       f"--batching_parameters_file={bad}"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and "without setting" in p.stderr


def test_labels_in_startup_config_need_flag(store):
    cfg = store.path("labels_at_startup.config")
    with open(cfg, "w") as fh:
        fh.write(f'model_config_list {{ config {{ name: "mlp" base_path: "{store.path("mlp")}" '
                 'model_platform: "tensorflow" version_labels { key: "stable" value: 1 } } }')
    srv = ServerProcess([f"--model_config_file={cfg}"], rest=False)
    rc = srv.wait_exit(120)
    assert rc == 1
    assert ("Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version 1 of model "
            "mlp, which is not currently available for inference") in srv.log


def test_restart_on_a_config_with_labels_as_the_embedded_stack_starts_it(store):
    """After a canary rollout the config file holds a ``stable`` label; a restarted server must
    come up on it (``make run`` after ``make stop``): the stack passes the flag TF Serving needs."""
    import devservers

    cfg = store.path("labels_at_restart.config")
    with open(cfg, "w") as fh:
        fh.write(f'model_config_list {{ config {{ name: "mlp" base_path: "{store.path("mlp")}" '
                 'model_platform: "tensorflow" version_labels { key: "stable" value: 1 } } }')
    flags = [a for a in devservers.serving_argv(Path(cfg), 0, 0)[1:] if not a.startswith(("--port", "--rest_api"))]
    assert "--allow_version_labels_for_unavailable_models" in flags
    srv = ServerProcess(flags).wait_ready()
    try:
        status = requests.get(f"http://127.0.0.1:{srv.rest_port}/v1/models/mlp/labels/stable", timeout=30).json()
        assert [(v["version"], v["state"]) for v in status["model_version_status"]] == [("1", "AVAILABLE")]
    finally:
        srv.terminate()


def test_write_config_atomic_roundtrip(tmp_path):
    cfg = parse_config_text('model_config_list { config { name: "a" base_path: "/m/a" model_platform: "tensorflow" '
                            'model_version_policy { specific { versions: 3 } } version_labels { key: "s" value: 3 } '
                            '} }')
    path = tmp_path / "models.config"
    write_config(path, cfg)
    write_config(path, cfg)
    assert load_config(path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]  # no temp files left behind
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "missing.config")
    assert ei.value.code.name == "NOT_FOUND"


def test_batching_parameters_file(tmp_path):
    p = tmp_path / "b.txt"
    p.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 1000 }\n"
                 "num_batch_threads { value: 2 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 16\n"
                 "pad_variable_length_inputs: false\nthread_pool_name { value: \"x\" }\n")
    o = load_batching_parameters(p)
    assert (o.max_batch_size, o.batch_timeout_micros, o.num_batch_threads, o.allowed_batch_sizes) == \
        (16, 1000, 2, [4, 16])
    p.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(Exception, match="must match max_batch_size"):
        load_batching_parameters(p)
    p.write_text("max_batch_sizes { value: 16 }\n")
    with pytest.raises(ConfigError, match="Invalid protobuf file"):
        load_batching_parameters(p)
    assert os.path.exists(p)
