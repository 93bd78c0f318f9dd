"""Writes the OpenVINO IR test models of the openvino backend (tests/openvino/models) from the
repository's ONNX models: each `<name>_ir/1/model.xml` + `model.bin` is OpenVINO's conversion of
`<name>/1/model.onnx`, weights kept in FP32, with a config.toml naming the openvino backend. The
golden outputs are the ONNX model's (its expected.json), which the tests read from there.

    .venv/bin/python tests/openvino/gen_ir.py

Deterministic for a given openvino release (scripts/requirements.txt pins it).
"""
import pathlib
import shutil

import openvino as ov

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/openvino/models"
SOURCES = {
    "ranker": ROOT / "examples/models/ranker",
    "multi_io": ROOT / "tests/conformance/models/multi_io",
}
CONFIG = """# OpenVINO IR of {src} (model.xml + model.bin), written by tests/openvino/gen_ir.py.
backend = "openvino"
max_batch_size = {batch}
"""


def batch_of(config: pathlib.Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("max_batch_size"):
            return int(line.split("=")[1])
    return 0


def main() -> None:
    for name, src in SOURCES.items():
        out = OUT / f"{name}_ir"
        if out.exists():
            shutil.rmtree(out)
        (out / "1").mkdir(parents=True)
        model = ov.convert_model(str(src / "1/model.onnx"))
        ov.save_model(model, str(out / "1/model.xml"), compress_to_fp16=False)
        rel = src.relative_to(ROOT)
        (out / "config.toml").write_text(CONFIG.format(src=rel, batch=batch_of(src / "config.toml")))
        print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
