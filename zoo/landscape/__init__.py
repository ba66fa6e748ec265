"""Loss-landscape metrics of a population: Hessian, mode connectivity, CKA, and Yang et al. phase labels."""
