#include <xenctrl.h>
#include <xenguest.h>
#include <xenstore.h>
