"""Booting a stored tree (layer 4): bootable (make-bootable: the OSTree boot layout), deploy (`ostree admin
deploy` of an exported commit), uboot (U-Boot script and uEnv.txt), lxc (containers running deployments)."""
