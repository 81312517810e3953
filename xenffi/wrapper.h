#include <xenctrl.h>
#include <xenguest.h>
#include <xenstore.h>
#include <xenevtchn.h>
#include <xengnttab.h>
