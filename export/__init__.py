"""medge export toolchain (workstation side). May import `edge`; the device never imports this."""
