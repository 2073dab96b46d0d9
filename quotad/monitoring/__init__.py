"""`quotad check`: the ledger's health as a Nagios/Icinga plugin sees it."""
