"""The merchant's console: profiles, segments, audiences, risk and the federation in a browser."""
