"""Where a batch's outputs go, and what is written next to them: manifest, contact sheet, XY grid."""
