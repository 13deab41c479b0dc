// Stand-in for std::ios_base_library_init() (GLIBCXX_3.4.32, GCC 13+). Older libstdc++ initialise the
// standard streams from their own static constructors, so nothing is left to do here.
extern "C" void smoa_ios_base_library_init() __asm__("_ZSt21ios_base_library_initv");
extern "C" void smoa_ios_base_library_init() {}
