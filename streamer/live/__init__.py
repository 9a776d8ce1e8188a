"""Frames in, annotated frames and recognition events out: sources, detection,
tracking, batched recognition, drawing, bundle reloads. No web and no enrollment:
this room imports neither `streamer.web` nor `streamer.enroll`."""
