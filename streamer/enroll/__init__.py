"""Enrollment through the server: photo uploads, the people API and capture from
the phone camera over a live WebRTC session. Adds its routes to the `streamer.web` app."""
