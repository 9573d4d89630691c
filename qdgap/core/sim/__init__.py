"""Making data: the Cd28Se17Cl22 model dot and GFN-xTB molecular dynamics."""
