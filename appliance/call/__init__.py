"""The call: state machine, flow and call references. Pure logic, no hardware imports."""
