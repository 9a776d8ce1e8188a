"""The aiohttp application: login and tokens, TLS, signalling and WebRTC sessions,
the model API and the static pages. Uses `streamer.live`; never `streamer.enroll`,
which adds its routes to this app from outside."""
