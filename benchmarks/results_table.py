"""Render benchmarks/results/*.json as benchmarks/RESULTS.md and the
README's benchmark tables (the blocks between its ``<!-- bench: NAME -->``
markers); `make bench` runs it after the benchmarks.

    python benchmarks/results_table.py
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectral_edge_fast.bench.tables import render_results, update_readme  # noqa: E402


def main() -> int:
    results = str(ROOT / "benchmarks" / "results")
    (ROOT / "benchmarks" / "RESULTS.md").write_text(render_results(results), encoding="utf-8")
    readme = ROOT / "README.md"
    readme.write_text(update_readme(readme.read_text(encoding="utf-8"), results), encoding="utf-8")
    print("wrote benchmarks/RESULTS.md and README.md's benchmark tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
