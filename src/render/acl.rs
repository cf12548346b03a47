//! Mosquitto ACL file: rendering and a parser that accepts exactly what Mosquitto accepts.
