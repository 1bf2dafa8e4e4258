"""`umt-data pack --num-nodes N --node-rank R`: nodes share the transcoding; the shards equal a one-machine pack's."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from umt.loaders.cli import main as data_main
from umt.loaders.making.pack import STATE, WHOLE_STATE, load_state, record_shard

from conftest import kill_when
from test_pack import _annotations, _pack_args, videos  # noqa: F401 (the module's video folder fixture)

OPTIONS = ("--shard-size", "3", "--short-side", "24")


def _shard_set(out: Path) -> dict[str, bytes]:
    """Every shard and the manifest, by name (what two packs must agree on)."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".tar" or p.name == "manifest.json"}


@pytest.fixture(scope="module")
def inputs(videos, tmp_path_factory):  # noqa: F811
    root, kinds = videos
    good = sorted(k for k, v in kinds.items() if v != "rejected")
    csv_path = _annotations(tmp_path_factory.mktemp("csv") / "a.csv", good + ["garbage.mp4"], repeat=3)
    whole = tmp_path_factory.mktemp("whole")
    data_main(_pack_args(csv_path, root, whole, *OPTIONS, "--workers", "2"))
    return csv_path, root, _shard_set(whole)


def test_two_concurrent_nodes_give_the_one_machine_shards(inputs, tmp_path, capsys):
    csv_path, root, expected = inputs
    out = tmp_path / "shared"
    nodes = [subprocess.Popen([sys.executable, "-m", "umt.loaders.cli", *_pack_args(
        csv_path, root, out, *OPTIONS, "--workers", "1", "--num-nodes", "2", "--node-rank", str(r))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=300) == 0, node.stdout.read()
    assert not list(out.glob("*.tar"))  # nodes transcode; the shards are written once, below
    data_main(_pack_args(csv_path, root, out, *OPTIONS, "--num-nodes", "2"))
    got = _shard_set(out)
    assert got.keys() == expected.keys() and len([n for n in got if n.endswith(".tar")]) >= 6
    for name in got:
        assert got[name] == expected[name], name
    assert not list(out.glob("parts-*"))  # the nodes' parts are removed once the manifest is written
    data_main(_pack_args(csv_path, root, out, *OPTIONS, "--num-nodes", "2"))  # a rerun changes nothing
    data_main(_pack_args(csv_path, root, out, *OPTIONS, "--num-nodes", "2", "--node-rank", "1"))
    assert "is packed already" in capsys.readouterr().out and not list(out.glob("parts-*"))
    assert _shard_set(out) == expected


def test_unfinished_node_is_named_and_a_killed_node_resumes(inputs, tmp_path, capsys):
    csv_path, root, expected = inputs
    out = tmp_path / "shared"
    node = _pack_args(csv_path, root, out, *OPTIONS, "--workers", "1", "--num-nodes", "2", "--node-rank")
    data_main(node + ["0"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        data_main(_pack_args(csv_path, root, out, *OPTIONS, "--num-nodes", "2"))
    error = capsys.readouterr().err
    assert "node 1: 5 part(s) missing, e.g. train-000001.tar" in error and "node 0" not in error
    assert not (out / "manifest.json").exists()
    parts = lambda: list(out.glob("parts-*/*.tar"))  # noqa: E731
    before = len(parts())
    kill_when("umt.loaders.cli", node + ["1"], lambda: len(parts()) > before)
    finished = {p.name: p.stat().st_mtime_ns for p in parts()}
    data_main(node + ["1"])
    assert all(p.stat().st_mtime_ns == finished[p.name] for p in parts() if p.name in finished)  # kept, not redone
    data_main(_pack_args(csv_path, root, out, *OPTIONS, "--num-nodes", "2"))
    assert _shard_set(out) == expected


@pytest.mark.parametrize("flags, message", [(("--num-nodes", "2", "--node-rank", "2"),
                                             "--node-rank 2 is not in [0, --num-nodes 2)"),
                                            (("--node-rank", "0"), "--node-rank needs --num-nodes"),
                                            (("--num-nodes", "0"), "--num-nodes must be at least 1")])
def test_node_flags_out_of_range_are_refused(inputs, tmp_path, capsys, flags, message):
    csv_path, root, _ = inputs
    with pytest.raises(SystemExit):
        data_main(_pack_args(csv_path, root, tmp_path / "o", *OPTIONS, *flags))
    assert message in capsys.readouterr().err


def test_pack_state_grows_by_one_line_per_shard_and_survives_a_cut_line(tmp_path):
    """Each finished shard appends its line (rewriting the state per shard cost the square of the shards)."""
    state = load_state(tmp_path, "f")
    before = (tmp_path / STATE).read_bytes()
    for n in range(3):
        record_shard(tmp_path, state, "train", {"name": None, "consumed": n + 1, "rejected": [], "flags": {}})
        after = (tmp_path / STATE).read_bytes()
        assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
        before = after
    (tmp_path / STATE).write_bytes(before + b'{"split": "train", "name": nu')  # killed mid-line
    assert [s["consumed"] for s in load_state(tmp_path, "f")["splits"]["train"]] == [1, 2, 3]
    assert load_state(tmp_path, "other")["splits"] == {}  # another pack's state starts afresh


def test_a_pack_state_written_whole_is_resumed_from(tmp_path):
    shards = [{"name": None, "consumed": 4, "rejected": [{"source": "a.mp4"}], "flags": {}}]
    (tmp_path / WHOLE_STATE).write_text(json.dumps({"fingerprint": "f", "splits": {"val": shards}}, indent=1))
    assert load_state(tmp_path, "f")["splits"] == {"val": shards}
    assert (tmp_path / STATE).is_file() and not (tmp_path / WHOLE_STATE).exists()
