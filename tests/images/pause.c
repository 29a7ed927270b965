/* The pause process of every pod sandbox (containerd's sandbox_image), built static by tests/tools.sh. */
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
#include <stdlib.h>
static void on_term(int s){ (void)s; _exit(0); }
static void on_chld(int s){ (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void){
  struct sigaction a = {0}; a.sa_handler = on_term;
  sigaction(SIGINT,&a,NULL); sigaction(SIGTERM,&a,NULL);
  struct sigaction c = {0}; c.sa_handler = on_chld; c.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD,&c,NULL);
  for(;;) pause();
}
