//! Policy over the data a request moves: which passages may reach which model
//! endpoints ([`residency`]).

pub mod residency;
