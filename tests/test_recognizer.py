"""The shared batch recognizer, with small real ONNX networks standing in for a backbone."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pipeline_support import RGB, SIZE, active, mean_colour_backbone, stand_in_bundle

from streamer.errors import ClosedError
from streamer.live.recognizer import ActiveModel, BatchRecognizer


@pytest.fixture
def model(tmp_path: Path) -> ActiveModel:
    backbone = mean_colour_backbone(tmp_path / "mean.onnx")
    return active(stand_in_bundle(tmp_path / "v1", backbone))


def _chips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8)


async def test_chips_from_many_streams_share_one_call(model: ActiveModel) -> None:
    recognizer = BatchRecognizer(model, batch_size=32, batch_wait_ms=100)
    try:
        chips = [_chips(1 + i % 3, seed=i) for i in range(12)]  # 24 faces from 12 requests

        async def stream(first: int) -> list:
            futures = [recognizer.submit(chips[i], model) for i in range(first, 12, 3)]
            return [await f for f in futures]

        per_stream = await asyncio.gather(*(stream(s) for s in range(3)))
        assert recognizer.batches == 1 and recognizer.faces == 24
        for s, results in enumerate(per_stream):
            for result, i in zip(results, range(s, 12, 3), strict=True):
                assert result.model is model
                assert np.allclose(result.embeddings, model.embedder.embed(chips[i]), atol=1e-6)
    finally:
        recognizer.close()


async def test_batch_size_caps_each_call(model: ActiveModel) -> None:
    recognizer = BatchRecognizer(model, batch_size=4, batch_wait_ms=50)
    try:
        futures = [recognizer.submit(_chips(1, seed=i), model) for i in range(10)]
        results = await asyncio.gather(*futures)
        assert all(r is not None for r in results)
        assert recognizer.batches == 3 and recognizer.faces == 10
    finally:
        recognizer.close()


async def test_results_arrive_on_the_event_loop_thread(model: ActiveModel) -> None:
    recognizer = BatchRecognizer(model, batch_wait_ms=0)
    try:
        future = recognizer.submit(_chips(2, seed=1), model)
        threads = []
        future.add_done_callback(lambda _: threads.append(threading.get_ident()))
        result = await future
        await asyncio.sleep(0)
        assert result is not None and result.embeddings.shape == (2, 3)
        assert threads == [threading.get_ident()]
        assert recognizer._thread.ident != threads[0]
    finally:
        recognizer.close()


async def test_full_queue_drops_the_oldest_requests(model: ActiveModel) -> None:
    recognizer = BatchRecognizer(model, batch_size=64, batch_wait_ms=300, max_queued=4)
    try:
        futures = [recognizer.submit(_chips(1, seed=i), model) for i in range(6)]
        results = await asyncio.gather(*futures)
        assert [r is None for r in results] == [True, True, False, False, False, False]
        assert recognizer.dropped == 2 and recognizer.faces == 4
    finally:
        recognizer.close()


async def test_swaps_take_effect_between_batches(tmp_path: Path, model: ActiveModel) -> None:
    """Swap back and forth between two backbones while requests keep coming: every
    request is answered, and each answer is wholly the work of the model it names."""
    other = active(
        stand_in_bundle(
            tmp_path / "v2",
            mean_colour_backbone(tmp_path / "mean2.onnx"),
            version=2,
            preprocessing=replace(RGB, colour="bgr"),
        )
    )
    recognizer = BatchRecognizer(model, batch_size=8, batch_wait_ms=1)
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            for m in (other, model):
                recognizer.swap(m)
                stop.wait(0.002)

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        chips = [_chips(3, seed=i) for i in range(60)]
        results = []
        for start in range(0, 60, 6):
            futures = [recognizer.submit(c, model) for c in chips[start : start + 6]]
            results.extend(await asyncio.gather(*futures))
    finally:
        stop.set()
        thread.join()
        recognizer.close()
    assert all(r is not None for r in results)
    assert {r.model.version for r in results} == {1, 2}
    for r, c in zip(results, chips, strict=True):
        assert np.allclose(r.embeddings, r.model.embedder.embed(c), atol=1e-6)


async def test_chips_of_another_geometry_are_not_embedded(
    tmp_path: Path, model: ActiveModel
) -> None:
    bigger = replace(RGB, size=(16, 16))
    big = active(
        stand_in_bundle(
            tmp_path / "v2",
            mean_colour_backbone(tmp_path / "big.onnx", size=16),
            version=2,
            preprocessing=bigger,
        )
    )
    recognizer = BatchRecognizer(big, batch_wait_ms=0)
    try:
        assert await recognizer.submit(_chips(1, seed=0), model) is None
        recognizer.swap(None)  # no bundle: nothing is recognised
        assert await recognizer.submit(_chips(1, seed=0), model) is None
        empty = await recognizer.submit(np.zeros((0, SIZE, SIZE, 3), np.uint8), model)
        assert empty is not None and empty.embeddings.shape == (0, 3)
    finally:
        recognizer.close()


async def test_close_answers_waiting_requests_and_refuses_new_ones(model: ActiveModel) -> None:
    recognizer = BatchRecognizer(model, batch_size=64, batch_wait_ms=10_000)
    future = recognizer.submit(_chips(1, seed=0), model)
    await asyncio.sleep(0.01)
    await asyncio.to_thread(recognizer.close)
    assert await asyncio.wait_for(future, 1.0) is None
    recognizer.close()
    assert not recognizer._thread.is_alive()
    with pytest.raises(ClosedError):
        recognizer.submit(_chips(1, seed=0), model)
