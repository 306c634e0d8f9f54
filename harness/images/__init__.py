"""Guest images: the Debian image and its agent image, Ignition configs for Fedora CoreOS, Vagrant boxes."""
