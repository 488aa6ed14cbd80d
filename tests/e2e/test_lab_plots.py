"""The lab's plots (GET /v1/lab/plots/...) from a real `gradserve serve` process: valid
PNG and SVG of the requested size for each plot, cached answers byte-equal, bad query
params 422 naming them, and inference that keeps its latency while a plot is drawn."""

from __future__ import annotations

import io
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerProcess

PLOTS = {
    "activation_stats": "depth=4&width=64&batch=128&activation=relu&init=kaiming_normal",
    "activation": "op=leaky_relu&negative_slope=0.1&low=-3&high=3",
    "margin": "classes=4&delta=2",
}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def png_size(body: bytes) -> tuple[int, int]:
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR"
    width, height = struct.unpack(">II", body[16:24])
    return width, height


@pytest.mark.parametrize("plot", sorted(PLOTS))
def test_png_of_the_requested_size(http: httpx.Client, plot: str) -> None:
    r = http.get(f"/v1/lab/plots/{plot}?{PLOTS[plot]}&img_width=640&img_height=480&dpi=80")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert png_size(r.content) == (640, 480)
    with Image.open(io.BytesIO(r.content)) as image:
        image.load()  # decodes every chunk: a truncated or corrupt PNG raises
        assert image.size == (640, 480)
        # Not blank: a drawn figure has many colours.
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 16


@pytest.mark.parametrize("plot", sorted(PLOTS))
def test_svg_of_the_requested_size(http: httpx.Client, plot: str) -> None:
    r = http.get(f"/v1/lab/plots/{plot}?{PLOTS[plot]}&format=svg&img_width=900&img_height=600&dpi=100")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(r.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # SVG sizes are in points: pixels / dpi inches, 72 points each.
    assert root.attrib["width"] == "648pt" and root.attrib["height"] == "432pt"
    # Self-contained: no scripts, nothing linked (the http:// strings are XML namespaces).
    assert b"<script" not in r.content and b'href="http' not in r.content


def test_default_png_has_titles_and_legends(http: httpx.Client) -> None:
    r = http.get("/v1/lab/plots/activation_stats?std=0.01&format=svg")
    assert r.status_code == 200
    # Text is drawn as paths; matplotlib keeps each text's string in an XML comment.
    for text in (
        "tanh, normal(std=0.01)",
        "Activation std per layer",
        "layer 10",
        "activation value",
        "std of dL/dW",
    ):
        assert text.encode() in r.content, text
    default = http.get("/v1/lab/plots/activation_stats?std=0.01")
    assert png_size(default.content) == (1200, 900)


def test_identical_queries_are_served_from_the_cache(http: httpx.Client) -> None:
    url = "/v1/lab/plots/margin?classes=5&delta=0.5&img_width=500&img_height=300"
    first = http.get(url)
    second = http.get(url)
    reordered = http.get("/v1/lab/plots/margin?img_height=300&img_width=500&delta=0.5&classes=5")
    assert first.status_code == second.status_code == reordered.status_code == 200
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == reordered.headers["x-cache"] == "hit"
    assert first.content == second.content == reordered.content
    assert http.get(url.replace("delta=0.5", "delta=0.6")).headers["x-cache"] == "miss"


def test_renders_are_deterministic(http: httpx.Client) -> None:
    # Two different queries that draw the same figure (the op's defaults spelled out
    # or not) render separately and give the same bytes, PNG and SVG.
    for fmt in ("png", "svg"):
        a = http.get(f"/v1/lab/plots/activation?op=elu&points=101&format={fmt}")
        b = http.get(f"/v1/lab/plots/activation?op=elu&points=101&alpha=1.0&format={fmt}")
        assert a.headers["x-cache"] == b.headers["x-cache"] == "miss"
        assert a.content == b.content


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("activation_stats?format=gif", "'format'"),
        ("activation_stats?img_width=100", "'img_width'"),
        ("activation_stats?img_height=5000", "'img_height'"),
        ("activation_stats?dpi=20", "'dpi'"),
        ("activation_stats?dpi=abc", "'dpi'"),
        ("activation_stats?depth=0", "'depth'"),
        ("activation_stats?width=4097", "'width'"),
        ("activation_stats?init=kaiming_normal&std=0.1", "'std'"),
        ("activation_stats?activation=softmax", "'activation'"),
        ("activation_stats?colour=red", "'colour'"),
        ("activation_stats?depth=2&depth=3", "'depth'"),
        ("activation?op=softmax", "'op'"),
        ("activation?op=tanh&negative_slope=0.1", "'negative_slope'"),
        ("activation?low=5&high=1", "'low', 'high'"),
        ("activation?low=nan", "'low'"),
        ("activation?points=1", "'points'"),
        ("activation?op=softplus&beta=0", "'beta'"),
        ("margin?classes=1", "'classes'"),
        ("margin?delta=-1", "'delta'"),
        ("margin?high=1e9", "'high'"),
    ],
)
def test_bad_query_params_are_422_naming_them(http: httpx.Client, path: str, named: str) -> None:
    r = http.get(f"/v1/lab/plots/{path}")
    assert r.status_code == 422, r.text
    assert named in r.json()["error"]["message"]


def test_over_the_work_cap_is_413(http: httpx.Client) -> None:
    r = http.get("/v1/lab/plots/activation_stats?depth=100&width=4096&batch=16384")
    assert r.status_code == 413 and r.json()["error"]["code"] == "work_too_large"


def test_unknown_plot_is_404(http: httpx.Client) -> None:
    assert http.get("/v1/lab/plots/pie").status_code == 404


def test_inference_keeps_its_latency_while_a_plot_is_drawn(server: ServerProcess) -> None:
    """The figure is drawn in the render worker process: the server's event loop keeps
    answering small requests at their usual speed meanwhile."""
    plot_s: list[float] = []

    def draw() -> None:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=120) as c:
            r = c.get(
                "/v1/lab/plots/activation_stats?depth=10&width=32&batch=64&img_width=2400&img_height=1800&dpi=150"
            )
        assert r.status_code == 200
        plot_s.append(time.monotonic() - started)

    def relu_s(c: httpx.Client) -> float:
        started = time.monotonic()
        assert c.post("/v1/activations/relu", json={"x": [[-1.0, 2.0]]}).status_code == 200
        return time.monotonic() - started

    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.post("/v1/activations/relu", json={"x": [1.0]})  # connection warm
        before = [relu_s(c) for _ in range(20)]  # the same calls with no render, to compare
        thread = threading.Thread(target=draw)
        thread.start()
        time.sleep(0.2)  # the render is under way
        latencies = []
        while thread.is_alive():
            latencies.append(relu_s(c))
            time.sleep(0.01)
        thread.join()
    assert plot_s, "the plot was not drawn"
    assert len(latencies) >= 5, latencies  # long enough to have overlapped
    # Relative to the same machine a moment before, not a wall-clock limit: the render
    # takes a core of its own, so some rise is expected on two cores. Measured here:
    # 2-4 ms median during a render, 2.4-6.6 ms beside 2-4 CPU hogs. (A render on a
    # thread of the server's own process stalled its event loop for up to 60 ms at a
    # time.)
    base, during = float(np.median(before)), float(np.median(latencies))
    print(f"plot {plot_s[0]:.2f} s; relu median {base * 1e3:.1f} ms before, {during * 1e3:.1f} ms during")
    assert during < 4 * base + 0.005, (base, latencies)
