//! Beacon kinds, one file each.

pub mod load;
