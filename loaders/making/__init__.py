"""Making datasets: packers (video, arrays, images) and generators of synthetic sets."""
