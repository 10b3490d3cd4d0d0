"""The CIFAR-10 pipeline's library: everything the stage scripts in stages/ and cifar10-predict share."""
