//! The planner (to be written).
pub mod state;
