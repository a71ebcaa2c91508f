import json

from kdsearch.bench import bench_metrics, main


def test_bench_prints_pipeline_and_bare_throughput_with_ratio(capsys):
    assert main(["--methods", "rd4ad", "--profile", "smoke", "--steps", "1", "--batch-size", "4", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    row, metrics = lines[0], lines[-1]["metrics"]
    assert row["method"] == "rd4ad" and row["image_size"] == 64 and row["batch_size"] == 4
    assert row["pipeline_images_per_s"] > 0 and row["bare_images_per_s"] > 0
    assert abs(row["ratio"] - row["pipeline_images_per_s"] / row["bare_images_per_s"]) < 1e-9
    assert metrics["maps"] == 120 and metrics["seconds"] > 0 and 0.0 <= metrics["au_pro"] <= 1.0


def test_bench_metrics_small():
    result = bench_metrics(num_maps=8, size=32)
    assert result["maps"] == 8 and 0.0 <= result["au_pro"] <= 1.0
