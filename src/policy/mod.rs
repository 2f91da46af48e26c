//! Policy over the data a request moves: which passages may reach which model
//! endpoints ([`residency`]), and what moving them between clouds costs
//! ([`egress`]).

pub mod egress;
pub mod residency;
