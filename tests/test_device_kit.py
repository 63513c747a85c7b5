"""scripts/device_kit/: packing, splitting, the device list, the device calls, verify's join.

Pure functions on small temp files only: no pip, no network, no device.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "device_kit",
    ROOT / "scripts" / "device_kit" / "__init__.py",
    submodule_search_locations=[str(ROOT / "scripts" / "device_kit")],
)
dk = importlib.util.module_from_spec(_spec)
sys.modules["device_kit"] = dk
_spec.loader.exec_module(dk)

MIB = 1024 * 1024


def test_normalise_follows_pep_503():
    assert dk.normalise("Open_Clip.Torch") == "open-clip-torch"
    assert dk.normalise("typing__extensions") == "typing-extensions"
    assert dk.normalise("PyYAML") == "pyyaml"
    assert dk.normalise("nvidia-cudnn-cu13") == "nvidia-cudnn-cu13"


def test_device_list_is_the_given_one_and_excludes_by_normalised_name():
    assert len(dk.DEVICE_HAS) == 197
    for name in ["torch", "torchvision", "numpy", "cupy_cuda13x", "PyYAML", "Typing_Extensions"]:
        assert dk.on_device(name), name
    for name in ["ray", "nvidia-dali-cuda130", "open_clip_torch", "av", "redis", "pydantic"]:
        assert not dk.on_device(name), name
    assert all(dk.normalise(n) == n for n in dk.DEVICE_HAS)
    assert all(dk.on_device(n) for n in dk.DEVICE_VERSIONS)


def test_part_names_are_split_style_and_cover_the_file():
    parts = dk.part_names("w.whl", 2 * 50 * MIB + 7, 50 * MIB)
    assert [p for p, _ in parts] == ["w.whl.part-aa", "w.whl.part-ab", "w.whl.part-ac"]
    assert [s for _, s in parts] == [50 * MIB, 50 * MIB, 7]
    assert dk.part_names("w.whl", 50 * MIB, 50 * MIB) == [("w.whl.part-aa", 50 * MIB)]
    many = dk.part_names("w.whl", 30, 1)
    assert many[26][0] == "w.whl.part-ba"
    with pytest.raises(ValueError):
        dk.part_names("w.whl", 0)


def test_pack_is_first_fit_decreasing_within_the_limit():
    sizes = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10, "f": 5}
    folders = dk.pack(sizes, limit=60, part_size=50)
    assert folders == [[("a", 50), ("e", 10)], [("b", 40), ("d", 20)], [("c", 30), ("f", 5)]]
    assert all(sum(s for _, s in f) <= 60 for f in folders)


def test_pack_splits_big_wheels_one_part_per_folder():
    limit, part = 55 * MIB, 50 * MIB
    sizes = {"dali.whl": 190 * MIB, "ray.whl": 76 * MIB, "av.whl": 33 * MIB, "small.whl": 3 * MIB}
    sizes.update({f"tiny{i}.whl": 100_000 for i in range(40)})
    folders = dk.pack(sizes, limit, part)
    files = [f for folder in folders for f, _ in folder]
    assert all(sum(s for _, s in folder) <= limit for folder in folders)
    assert "dali.whl" not in files and "ray.whl" not in files
    assert sorted(f for f in files if f.startswith("dali.whl")) == [
        f"dali.whl.part-a{c}" for c in "abcd"
    ]
    for folder in folders:
        owners = [f.split(".part-")[0] for f, _ in folder if ".part-" in f]
        assert len(owners) == len(set(owners)), folder
    assert sum(s for folder in folders for _, s in folder) == sum(sizes.values())
    assert len(files) == len(set(files))
    assert len(folders) <= -(-sum(sizes.values()) // limit) + 1


def test_pack_rejects_a_part_larger_than_a_folder():
    with pytest.raises(ValueError):
        dk.pack({"a": 10}, limit=5, part_size=6)


def _kit(tmp_path: Path, sizes: dict[str, int], limit: int, part: int):
    """Wheels of random bytes packed into tmp/.whl/cN as build does; returns (kit, manifest)."""
    src = tmp_path / "src"
    src.mkdir()
    wheels = {}
    for i, (name, size) in enumerate(sizes.items()):
        data = bytes((i * 7 + j * 13) % 251 for j in range(size))
        (src / name).write_bytes(data)
        wheels[name] = {
            "name": name.split("-")[0],
            "size": size,
            "sha256": dk.sha256_of([src / name]),
        }
    folders = dk.pack(sizes, limit, part)
    manifest = dk.make_manifest(folders, wheels, limit=limit, part_size=part)
    kit = tmp_path / ".whl"
    for f in manifest["folders"]:
        (kit / f["name"]).mkdir(parents=True)
    for w in manifest["wheels"]:
        if w["parts"]:
            dk.write_parts(
                src / w["file"], [(kit / p["folder"] / p["file"], p["size"]) for p in w["parts"]]
            )
        else:
            (kit / w["folder"] / w["file"]).write_bytes((src / w["file"]).read_bytes())
    (kit / dk.MANIFEST).write_text(json.dumps(manifest))
    return src, kit, manifest


SIZES = {"big-1.whl": 2500, "mid-1.whl": 900, "a-1.whl": 300, "b-1.whl": 120, "c-1.whl": 1}


def test_verify_joins_parts_and_checks_sha256(tmp_path):
    src, kit, manifest = _kit(tmp_path, SIZES, limit=1000, part=800)
    for f in manifest["folders"]:
        assert sum(p.stat().st_size for p in (kit / f["name"]).iterdir()) <= 1000
    big = next(w for w in manifest["wheels"] if w["file"] == "big-1.whl")
    assert [p["size"] for p in big["parts"]] == [800, 800, 800, 100]
    assert len({p["folder"] for p in big["parts"]}) == 4
    code, problems = dk.verify_kit(kit, manifest)
    assert (code, problems) == (0, [])
    joined = kit / dk.JOINED / "big-1.whl"
    assert joined.read_bytes() == (src / "big-1.whl").read_bytes()
    # the same bytes as `cat part-aa part-ab ...`
    cat = subprocess.run(
        ["cat", *[str(kit / p["folder"] / p["file"]) for p in big["parts"]]],
        capture_output=True,
        check=True,
    ).stdout
    assert hashlib.sha256(cat).hexdigest() == big["sha256"]
    listed = (kit / dk.INSTALL_LIST).read_text().split()
    assert sorted(Path(p).name for p in listed) == sorted(SIZES)
    assert str(joined) in listed and all(".part-" not in p for p in listed)
    (kit / "c9").mkdir()  # a stale folder from an earlier build is not installed
    (kit / "c9" / "old-0.whl").write_bytes(b"x")
    assert dk.main(["verify", "--kit", str(kit)]) == 0
    assert "old-0.whl" not in (kit / dk.INSTALL_LIST).read_text()


def test_verify_reports_a_cold_machine_and_bad_bytes(tmp_path):
    _, kit, manifest = _kit(tmp_path, SIZES, limit=1000, part=800)
    part = next(w for w in manifest["wheels"] if w["parts"])["parts"][1]
    path = kit / part["folder"] / part["file"]
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    code, problems = dk.verify_kit(kit, manifest)
    assert code == 4 and "sha256" in problems[0]
    path.write_bytes(bytes(data[:-1]))
    assert dk.verify_kit(kit, manifest)[0] == 4
    whole = next(w for w in manifest["wheels"] if not w["parts"])
    (kit / whole["folder"] / whole["file"]).unlink()
    assert any("missing wheel" in p for p in dk.verify_kit(kit, manifest)[1])
    for f in list(kit.iterdir()):
        if f.name == "c2":
            for x in f.iterdir():
                x.unlink()
            f.rmdir()
    code, problems = dk.verify_kit(kit, manifest)
    assert code == 3 and "c2" in problems[0]
    assert dk.main(["verify", "--kit", str(kit)]) == 3


def _manifest(folders: int) -> dict:
    return {
        "folders": [{"name": f"c{i}", "bytes": 1, "files": []} for i in range(1, folders + 1)],
        "wheels": [{"file": "w.whl", "parts": [{"file": "w.whl.part-aa"}]}],
    }


def test_device_calls_carry_one_folder_each_and_fit_the_command_limit():
    for n in [1, 2, 8, 40]:
        calls = dk.device_calls(_manifest(n))
        assert len(calls) == n
        assert [c["carry"][0] for c in calls] == [f".whl/c{i}" for i in range(1, n + 1)]
        assert all(c["carry"][1] == ".whl/manifest.json" for c in calls)
        assert all(len(c["command"]) <= dk.COMMAND_BUDGET < 2000 for c in calls)
        assert all(len(c["carry"]) <= 8 for c in calls)
        last = calls[-1]["command"]
        for i in range(1, n):
            assert f".whl/c{i} " in last or f".whl/c{i};" in last
        assert "exit 3" in last and "scripts/device_kit verify" in last
        assert "--no-index --no-deps --no-compile --no-cache-dir" in last
        assert "export PYTHONPATH=/tmp/site:$PWD" in last
        assert "set -o pipefail" in last and "make " not in last
        assert last.endswith("python3 scripts/gpu_check.py --quick 2>&1 | tee $OUT/gpu_check.log")
        assert dk.precheck_step() in last  # a one-folder kit's only call checks the device too
    first = dk.device_calls(_manifest(3))[0]["command"]
    assert first.startswith(dk.precheck_step()) and "|| exit $?" in first
    light = dk.device_calls(_manifest(3), kit=dk.KIT_LIGHT)
    assert [c["carry"][0] for c in light] == [f".whl/light/c{i}" for i in (1, 2, 3)]
    assert light[-1]["command"].endswith(
        "gpu_check.py --quick --skip end-to-end 2>&1 | tee $OUT/gpu_check.log"
    )
    assert "$(cat .whl/install.txt)" in dk.device_calls(_manifest(3))[-1]["command"]


def test_check_command_refuses_long_commands():
    assert dk.check_command("x" * dk.COMMAND_BUDGET) == "x" * dk.COMMAND_BUDGET
    with pytest.raises(ValueError):
        dk.check_command("x" * (dk.COMMAND_BUDGET + 1))
    with pytest.raises(ValueError):
        dk.device_calls(_manifest(400))


def test_final_command_stops_with_3_when_a_folder_is_gone(tmp_path):
    (tmp_path / ".whl" / "c1").mkdir(parents=True)
    command = dk.final_command(["c1", "c2", "c3"]).split("; du -sh")[0]
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 3 and ".whl/c2" in done.stdout
    (tmp_path / ".whl" / "c2").mkdir()
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0


def test_stub_versions_and_freeze(tmp_path):
    assert dk.stub_version("2.5.2") == "2.5.2+stub"
    assert dk.stub_version("2.11.0+cu130") == "2.11.0+cu130"
    freeze = tmp_path / "f.txt"
    freeze.write_text("Protobuf==6.31.1\nray==2.60.0\n-e git+x#egg=y\nnumpy==2.5.2\n")
    assert dk.read_freeze(freeze) == {"protobuf": "6.31.1", "numpy": "2.5.2"}
    wheel = dk.stub_wheel(tmp_path, "huggingface-hub", "1.33.0+stub")
    assert wheel.name == "huggingface_hub-1.33.0+stub-py3-none-any.whl"


def _item(name, version, requires=(), extras=()):
    return {
        "metadata": {"name": name, "version": version, "requires_dist": list(requires)},
        "requested_extras": list(extras),
        "download_info": {"url": f"https://x/{name}-{version}-py3-none-any.whl"},
    }


def test_closure_stops_at_device_packages():
    items = [
        _item(
            "ray",
            "2.60.0",
            ["numpy>=1.20", "pydantic", "aiohttp_cors; extra == 'serve'"],
            ["serve"],
        ),
        _item("pydantic", "2", ["typing-extensions>=4"]),
        _item("typing-extensions", "4.16"),
        _item("aiohttp-cors", "0.8", ["aiohttp>=3.9"]),
        _item("pandas", "3", ["tzdata"]),
        _item("tzdata", "1"),
        _item("numpy", "2.5.2+stub"),
        _item("av", "19", ["colorama; sys_platform == 'win32'", "extra-only; extra == 'x'"]),
    ]
    got = dk.closure(items, ["ray[serve]==2.60.0", "av", "pandas"])
    assert got == {"ray": {""}, "pydantic": {"ray"}, "aiohttp-cors": {"ray"}, "av": {""}}
    assert "tzdata" not in got  # needed only by the device's own pandas
    forced = dk.closure(items, ["ray[serve]==2.60.0"], force=["typing_extensions"])
    assert forced["typing-extensions"] == {"pydantic"}
    needs = dk.requires_of_device(items, got)
    assert {(r["name"], r["specifier"], r["by"]) for r in needs} == {
        ("numpy", ">=1.20", "ray"),
        ("typing-extensions", ">=4", "pydantic"),
        ("aiohttp", ">=3.9", "aiohttp-cors"),
    }


def test_unmet_requirements():
    have = {"protobuf": "6.31.1", "numpy": "2.5.2"}
    wanted = [("protobuf", ">=6.33.5,<8", "google-api-core"), ("numpy", ">=1.20", "ray")]
    wanted.append(("aiohttp", "", "ray"))
    assert dk.unmet(wanted, have) == [
        "google-api-core needs protobuf>=6.33.5,<8: protobuf 6.31.1 here",
        "ray needs aiohttp: not installed",
    ]


def test_merge_namespaces(tmp_path):
    target, device = tmp_path / "site", tmp_path / "device"
    (target / "nvidia" / "dali").mkdir(parents=True)
    (target / "nvidia" / "__init__.py").write_text("# licence\n")
    (device / "nvidia" / "cu13").mkdir(parents=True)
    (target / "google" / "api_core").mkdir(parents=True)
    (device / "google" / "protobuf").mkdir(parents=True)
    (target / "real").mkdir()
    (target / "real" / "__init__.py").write_text("x = 1\n")
    (device / "real").mkdir()
    (target / "bin").mkdir()
    assert dk.merge_namespaces(target, [str(target), str(device)]) == ["nvidia"]
    assert dk.EXTEND_PATH in (target / "nvidia" / "__init__.py").read_text()
    assert not (target / "google" / "__init__.py").exists()  # both namespaces: they merge
    assert (target / "real" / "__init__.py").read_text() == "x = 1\n"
    assert dk.merge_namespaces(target, [str(target), str(device)]) == []
    code = (
        "import importlib.util as u, sys; sys.path[:0] = sys.argv[1:3]; "
        "print(bool(u.find_spec('nvidia.dali')), bool(u.find_spec('nvidia.cu13')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target), str(device)], capture_output=True, text=True
    )
    assert out.stdout.split() == ["True", "True"]
    assert dk.trivial_init("") and dk.trivial_init("# c\n\n" + dk.EXTEND_PATH)
    assert not dk.trivial_init("import os\n")


def test_precheck_names_what_the_device_lacks():
    def which(tool: str) -> str | None:
        return None if tool == "nvidia-smi" else f"/usr/bin/{tool}"

    assert dk.device_problems("3.12", (3, 12), "libnvcuvid.so.1", lambda t: f"/bin/{t}") == []
    bad = dk.device_problems("3.12", (3, 11), None, which)
    assert len(bad) == 3
    assert "python3 is 3.11, the kit's wheels are for 3.12" in bad[0]
    assert "libnvcuvid" in bad[1] and "`nvidia-smi` is not on PATH" in bad[2]
    assert set(dk.DEVICE_TOOLS) >= {"python3", "tee", "du", "nvidia-smi"}
    assert "make" not in dk.DEVICE_TOOLS
    drift = dk.version_drift({"numpy": "2.5.2", "torch": dk.TESTED_HERE["torch"]})
    assert drift == [f"numpy 2.5.2 here, {dk.TESTED_HERE['numpy']} tested"]


def test_precheck_aborts_here_where_python_and_nvdec_differ(tmp_path, capsys):
    """This box (no libnvcuvid) fails call 1's check with exit 6, before any later call."""
    kit = tmp_path / ".whl"
    kit.mkdir()
    manifest = {"python": "3.0", "requires_of_device": [], "folders": [], "wheels": []}
    (kit / dk.MANIFEST).write_text(json.dumps(manifest))
    assert dk.main(["precheck", "--kit", str(kit), "--freeze", str(tmp_path / "f.txt")]) == 6
    out = capsys.readouterr().out
    assert "ABORT python3 is" in out and "aborting now" in out
    assert "numpy==" in (tmp_path / "f.txt").read_text()


def test_every_carried_requirement_is_pinned_to_what_was_tested():
    for req in dk.REQUIREMENTS:
        assert "==" in req, req
    assert set(dk.REQUIREMENTS_LIGHT) < set(dk.REQUIREMENTS)
    light = " ".join(dk.kit_requirements(dk.KIT_LIGHT))
    assert "nvidia-dali" in light and "open_clip_torch" in light and "av==" in light
    assert not any(n in light for n in ("ray", "redis", "fastapi", "uvicorn"))
    import importlib.metadata as md

    for req in dk.REQUIREMENTS:
        name, version = req.split("==")
        try:
            here = md.version(name.split("[")[0])
        except md.PackageNotFoundError:
            continue
        assert here == version, f"{name}: {here} installed here, {version} pinned"
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8").split()
    for req in dk.REQUIREMENTS:  # make venv installs exactly what the kit carries
        name, version = req.split("==")
        assert f"{name.split('[')[0]}=={version}" in constraints, f"{req} not in constraints.txt"
