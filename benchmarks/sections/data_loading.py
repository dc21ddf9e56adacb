"""benchmarks/README.md's "Data loading" (benchmarks/results/data_loading.json)."""

from __future__ import annotations

import statistics

from render import block, results
from sections.common import command, count, fixed, gib, minutes, option, span, table

PATHS = ("in memory", "streamed")


def report() -> dict:
    return results("data_loading")


@block("data_loading.memory")
def memory() -> str:
    r = report()
    cells = {(m["images"], m["image_size"], m["path"]): m for m in r["memory"]}
    keys = sorted({(images, size) for images, size, _ in cells}, key=lambda k: (k[1], k[0]))
    rows = [[count(images), size] + [value for path in PATHS for value in
                                     (gib(cells[images, size, path]["peak_bytes"], unit=False),
                                      f"{cells[images, size, path]['load_seconds']:.1f}")]
            for images, size in keys]
    imports = statistics.median(m["imports_bytes"] for m in r["memory"])
    return (f"Each configuration in a fresh process: loading, then {r['read_batches']} training batches; peak resident "
            f"memory, of which {gib(imports)} is the imported libraries (the median over the processes):\n\n"
            + table(["images (train + val + test)", "px", "in memory: peak GiB", "in memory: load s",
                     "streamed: peak GiB", "streamed: load s"], rows))


@block("data_loading.runs")
def runs() -> str:
    r = report()
    in_memory, streamed = ({p["path"]: p for p in r["processes"]}[path] for path in PATHS)
    run, stream = r["run_224"], r["run_224_streaming"]
    argv = run["command"][:run["command"].index("--out")]
    return (f"A streamed {option(argv, '--image-size')} px run ({command(['lt-plugin', *argv])}) peaked at "
            f"{gib(run['peak_bytes'])} ({minutes(run['seconds'])}); with `--streaming` instead, "
            f"{gib(stream['peak_bytes'])} ({minutes(stream['seconds'])}). Each process of a two-process `accelerate launch` holds what one process holds ({in_memory['image_size']} px, "
            f"{count(in_memory['train_images'])} training images: in memory "
            f"{gib(in_memory['one_process_peak_bytes'])} alone against "
            f"{' and '.join(map(gib, in_memory['two_processes_peak_bytes']))} each of two; streamed "
            f"{gib(streamed['one_process_peak_bytes'])} against "
            f"{' and '.join(map(gib, streamed['two_processes_peak_bytes']))}).\n")


def throughput_ratios() -> list:
    return [t["stream_images_per_second"] / t["train_step_images_per_second"] for t in report()["throughput"]]


@block("data_loading.throughput")
def throughput() -> str:
    rows_by_size = {}
    for t in report()["throughput"]:
        rows_by_size.setdefault(t["image_size"], {})[t["workers"]] = t
    workers = sorted(next(iter(rows_by_size.values())))
    rows = [[size] + [count(by_workers[w]["stream_images_per_second"]) for w in workers]
            + [count(by_workers[workers[0]]["train_step_images_per_second"])]
            for size, by_workers in rows_by_size.items()]
    return ("Whether streaming keeps up with training, images/s:\n\n"
            + table(["px"] + [f"streamed, {w} worker{'s' * (w != 1)}" for w in workers]
                    + ["resnet18 training step consumes"], rows))


@block("data_loading.hub_stream")
def hub_stream() -> str:
    rows = report()["hub_stream"]
    size = rows[0]["image_size"]
    by_workers = {r["workers"]: r for r in rows if r["train_images"] == rows[0]["train_images"]}
    table_rows = [[label] + [count(by_workers[w][key]["read_images_per_second"]) for w in sorted(by_workers)]
                  for label, key in (("`--streaming`", "hub stream"), ("`--data-in-memory no`", "streamed"))]
    peaks = [r["hub stream"]["peak_bytes"] for r in rows]
    images = sorted({r["hub stream"]["images"] for r in rows})
    return (f"`--streaming` ([docs/data.md](../docs/data.md#streaming-hub-datasets)), measured side by side with "
            f"`--data-in-memory no` in one run (the same Fashion-MNIST read as a `datasets` stream, {size} px): peak "
            f"memory {span(peaks, gib)} at {', '.join(count(i) for i in images)} images, and images/s:\n\n"
            + table([f"{size} px"] + [f"{w} worker{'s' * (w != 1)}" for w in sorted(by_workers)], table_rows))


@block("data_loading.claims")
def claims() -> str:
    by_size = {}
    for t in report()["throughput"]:
        by_size.setdefault(t["image_size"], {})[t["workers"]] = t["stream_images_per_second"]
    one_slower = [size for size, speed in by_size.items() if speed.get(1, 0) < speed[0] < speed.get(2, 0)]
    largest = max(by_size)
    return (f"Streaming reads {span(throughput_ratios(), fixed(0))} times the images per second a CPU "
            f"training step consumes. At {' and '.join(f'{size} px' for size in one_slower) or 'no size'} one worker "
            "was slower than none and two were faster: a worker process pays for moving batches between processes. "
            f"A GPU training thousands of images per second at {largest} px needs several workers: one core here "
            f"decodes and resizes {count(by_size[largest][0])} small grayscale images per second at that size, and "
            "JPEG photographs (not measured here) cost more.\n")
