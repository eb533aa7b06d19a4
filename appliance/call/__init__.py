"""The call: state machine and flow. Pure logic, no hardware imports."""
