"""The machine a guest runs on: the harness's QEMU and its QMP monitor and command channel, the accelerator probe, and the Vagrant and Fedora CoreOS backends."""
