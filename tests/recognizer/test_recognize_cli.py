"""`gated recognize` run as an installer runs it, on generated labelled pictures."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import pytest

from bench.plate_scenes import REGIONS, make_scene
from tests.daemon.harness import gated

pytest.importorskip("onnxruntime")  # the recognize extra (part of the test extra)

EX_SOME_FAILED, EX_UNAVAILABLE = 1, 69


def recognize(*args: str) -> tuple[int, list[dict], str]:
    """(exit status, the JSON objects on stdout, stderr) of `gated recognize …`."""
    done = gated("recognize", *args, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Five scenes of each region (varied fonts and degradations) and four without a plate."""
    folder = tmp_path_factory.mktemp("scenes")
    labels: dict[str, str | None] = {}
    for i, region in enumerate(REGIONS * 5):
        scene = make_scene(1000 + i, region=region)
        labels[str(folder / f"{region}-{i}.jpg")] = scene.plate
        cv2.imwrite(str(folder / f"{region}-{i}.jpg"), scene.image)
    for i in range(4):
        scene = make_scene(2000 + i, negative=True)
        labels[str(folder / f"none-{i}.png")] = None
        cv2.imwrite(str(folder / f"none-{i}.png"), scene.image)
    return labels


@pytest.fixture(scope="module")
def results(labelled: dict[str, str | None]) -> tuple[int, list[dict], str]:
    return recognize(*labelled)


def test_plates_are_read_end_to_end(labelled: dict[str, str | None], results) -> None:
    status, lines, _ = results
    assert status == 0
    assert [line["file"] for line in lines] == list(labelled)
    read = {line["file"]: line["plate"] for line in lines}
    wrong = {f: (read[f], truth) for f, truth in labelled.items() if read[f] not in (truth, None)}
    assert not wrong, f"plates not in the picture: {wrong}"
    with_plate = [f for f, truth in labelled.items() if truth is not None]
    exact = sum(read[f] == labelled[f] for f in with_plate)
    assert exact >= 0.85 * len(with_plate), {f: (read[f], labelled[f]) for f in with_plate}
    for region in REGIONS:  # every region's format is read
        assert any(read[f] == labelled[f] for f in with_plate if f"/{region}-" in f), region


def test_plate_less_scenes_read_null(labelled: dict[str, str | None], results) -> None:
    _, lines, _ = results
    for line in lines:
        if labelled[line["file"]] is None:
            assert line["plate"] is None and line["candidates"] == [], line


def test_each_line_carries_the_documented_fields(results) -> None:
    _, lines, _ = results
    line = next(line for line in lines if line["plate"])
    assert {"file", "plate", "confidence", "candidates", "ms", "region", "box"} <= set(line)
    assert 0 < line["confidence"] <= 1 and line["ms"] > 0
    best = line["candidates"][0]
    assert best["plate"] == line["plate"] and len(best["chars"]) == len(line["plate"])
    assert [c[0][0] for c in best["chars"]] == list(line["plate"])


def test_stderr_names_the_model_and_where_it_was_found(results) -> None:
    _, _, stderr = results
    assert "backend rapidocr" in stderr and "PP-OCR" in stderr
    assert "rapidocr/models (installed package)" in stderr


def test_bad_files_get_an_error_each_and_the_others_are_still_read(tmp_path: Path) -> None:
    scene = make_scene(1003, region="uk")
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), scene.image)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    # a valid PNG header claiming 60000 x 60000 pixels: refused before anything is decoded
    ihdr = b"IHDR" + (60000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    huge = tmp_path / "huge.png"
    huge.write_bytes(
        b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr
        + zlib.crc32(ihdr).to_bytes(4, "big")
    )  # fmt: skip
    missing = tmp_path / "missing.jpg"
    files = [truncated, empty, good, text, huge, missing]
    status, lines, _ = recognize(*map(str, files))
    assert status == EX_SOME_FAILED
    by_file = {Path(line["file"]).name: line for line in lines}
    assert list(by_file) == [f.name for f in files]
    assert "truncated JPEG" in by_file["truncated.jpg"]["error"]
    assert by_file["empty.jpg"]["error"] == "empty file"
    assert "not a JPEG or PNG" in by_file["notes.jpg"]["error"]
    assert "60000x60000 is too large" in by_file["huge.png"]["error"]
    assert "cannot read" in by_file["missing.jpg"]["error"]
    assert "error" not in by_file["good.jpg"] and by_file["good.jpg"]["plate"] == scene.plate
    for line in lines:
        assert {"file", "plate", "confidence", "candidates", "ms"} <= set(line)


def test_missing_models_are_a_clear_refusal(tmp_path: Path) -> None:
    status, lines, stderr = recognize("--model-dir", str(tmp_path / "nowhere"), str(tmp_path))
    assert status == EX_UNAVAILABLE and lines == []
    assert "model_dir" in stderr and "nowhere" in stderr
    status, _, stderr = recognize("--model-dir", str(tmp_path), str(tmp_path))
    assert status == EX_UNAVAILABLE and "no PP-OCR det model" in stderr


def test_bad_arguments_name_the_setting(tmp_path: Path) -> None:
    done = gated("recognize", "--region", "mars", str(tmp_path / "x.jpg"))
    assert done.returncode != 0 and "regions" in done.stderr and "mars" not in done.stdout
    done = gated("recognize", "--min-confidence", "2", str(tmp_path / "x.jpg"))
    assert done.returncode != 0 and "min_confidence" in done.stderr


def test_models_from_an_installer_folder(tmp_path: Path) -> None:
    from gated.hardware.recognizer.pipeline import package_model_dir

    package = package_model_dir()
    assert package is not None
    for model in package.glob("*_[dr]e[tc]_*.onnx"):
        (tmp_path / model.name).symlink_to(model)
    scene = make_scene(1001, region="fr")
    picture = tmp_path / "fr.jpg"
    cv2.imwrite(str(picture), scene.image)
    status, lines, stderr = recognize("--model-dir", str(tmp_path), "--region", "fr", str(picture))
    assert status == 0 and f"from {tmp_path} (model_dir)" in stderr
    assert lines[0]["plate"] in (scene.plate, None)


def test_importing_the_recognizer_loads_no_ocr_runtime() -> None:
    code = (
        "import sys, gated.hardware.recognizer, gated.recognize_cli\n"
        "loaded = {'onnxruntime', 'rapidocr'} & set(sys.modules)\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
