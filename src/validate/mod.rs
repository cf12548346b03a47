//! Pure validation of user input that the CRD schema cannot express (or that must also hold
//! for offline rendering): usernames, topic filters, CIDRs, durations, password strength.
