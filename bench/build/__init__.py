"""Build steps: training the embedded micro models (`python -m bench.build.pretrain`: micro CLIP, VAE,
micro SD) and the oracle (`python -m bench.build.oracle`). Each runs once, on CPU, and its outputs are
committed under bench/zoo/; nothing at run time imports them."""
