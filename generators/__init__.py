"""Weight generators behind one interface: diffusion, vqar, hyper."""
