"""The merchant's on-site part: profiles, recommendations, segments, audiences and risk, served over gRPC."""
